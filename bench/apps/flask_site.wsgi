# A small Flask site (a template page and a JSON API), served two ways by
# bench/load.rs: as a script named by SCRIPT_FILENAME (not preloaded) and
# preloaded with `-m`. The responses do not depend on the process, so both
# workers answer byte for byte the same.
from flask import Flask, jsonify, render_template_string, request

app = Flask(__name__)

PAGE = """<!doctype html><title>{{ title }}</title>
<h1>{{ title }}</h1>
<ul>{% for i in items %}<li class="{{ loop.cycle('odd', 'even') }}">{{ i.name }}: {{ i.value }}</li>{% endfor %}</ul>
<form method="post"><input name="q" value="{{ q|e }}"></form>"""


@app.route("/")
def index():
    items = [{"name": "item%d" % i, "value": i * i} for i in range(20)]
    return render_template_string(PAGE, title="Bench", items=items, q=request.args.get("q", ""))


@app.route("/api/<int:n>")
def api(n):
    return jsonify(n=n, squares=[i * i for i in range(n % 100)])


application = app
