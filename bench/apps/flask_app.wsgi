# A small Flask application: routing, the request object and a response
# built from a query value (the "small Flask app" scenario).
from markupsafe import escape

from flask import Flask, request

app = Flask(__name__)


@app.route("/")
def index():
    return "<p>Hello %s, item %d</p>" % (escape(request.args.get("name", "world")), 7)


application = app
