# A small Django project as `django-admin startproject` makes it (the admin,
# auth, contenttypes, sessions, messages and staticfiles apps and their
# middleware) with the Flask site's two pages (a template page and a JSON
# API), preloaded with `-m` by bench/load.rs: one file, settings in code, an
# in-memory database the pages never query. The responses do not depend on
# the process, so both workers answer byte for byte the same.
import django
from django.conf import settings


class urls:
    # ROOT_URLCONF may be any object with urlpatterns (hashable: a class).
    urlpatterns = []


settings.configure(
    DEBUG=False,
    SECRET_KEY="lswsgi-bench-secret-key-not-for-production-0123456789",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=urls,
    INSTALLED_APPS=[
        "django.contrib.admin",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
        "django.contrib.staticfiles",
    ],
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ],
    TEMPLATES=[
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,
            "OPTIONS": {
                "context_processors": [
                    "django.template.context_processors.request",
                    "django.contrib.auth.context_processors.auth",
                    "django.contrib.messages.context_processors.messages",
                ]
            },
        }
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    STATIC_URL="static/",
    USE_TZ=True,
)
django.setup()

from django.contrib import admin  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.template import engines  # noqa: E402
from django.urls import path  # noqa: E402

PAGE = engines["django"].from_string(
    """<!doctype html><title>{{ title }}</title>
<h1>{{ title }}</h1>
<ul>{% for i in items %}<li class="{% cycle 'odd' 'even' %}">{{ i.name }}: {{ i.value }}</li>{% endfor %}</ul>
<form method="post"><input name="q" value="{{ q }}"></form>"""
)


def index(request):
    items = [{"name": "item%d" % i, "value": i * i} for i in range(20)]
    return HttpResponse(PAGE.render({"title": "Bench", "items": items, "q": request.GET.get("q", "")}, request))


def api(request, n):
    return JsonResponse({"n": n, "squares": [i * i for i in range(n % 100)]})


urls.urlpatterns = [path("admin/", admin.site.urls), path("", index), path("api/<int:n>", api)]
application = get_wsgi_application()
