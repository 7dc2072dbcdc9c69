"""A small Flask site for the ProcessGroup memory bench: a template, JSON,
a form-ish page. Preloaded with `lswsgi -m bench/apps/pgroup_flask.py:app`.

PGROUP_BENCH_NO_FREEZE=1 turns the worker's gc.freeze into a no-op (it looks
gc.freeze up when it forks), to measure children without it.
"""
import gc
import os

if os.environ.get("PGROUP_BENCH_NO_FREEZE") == "1":
    gc.freeze = lambda: None

from flask import Flask, jsonify, render_template_string, request

app = Flask(__name__)

PAGE = """<!doctype html><title>{{ title }}</title>
<h1>{{ title }}</h1>
<ul>{% for i in items %}<li class="{{ loop.cycle('odd', 'even') }}">{{ i.name }}: {{ i.value }}</li>{% endfor %}</ul>
<form method="post"><input name="q" value="{{ q|e }}"></form>"""


@app.route("/")
def index():
    items = [{"name": "item%d" % i, "value": i * i} for i in range(50)]
    return render_template_string(PAGE, title="Bench", items=items, q=request.args.get("q", ""))


@app.route("/api/<int:n>")
def api(n):
    return jsonify(n=n, squares=[i * i for i in range(n % 100)], pid=os.getpid())


@app.route("/gc")
def collect():
    # A full collection, which a long-lived child eventually runs by itself.
    return jsonify(collected=gc.collect())
