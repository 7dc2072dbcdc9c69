from django.urls import path

from . import views

urlpatterns = [
    path("form", views.form, name="form"),
    path("submit", views.submit, name="submit"),
    path("login", views.login, name="login"),
    path("done", views.done, name="done"),
    path("upload", views.upload, name="upload"),
    path("cookie/set", views.cookie_set, name="cookie_set"),
    path("cookie/get", views.cookie_get, name="cookie_get"),
    path("stream", views.stream, name="stream"),
    path("stream_gate", views.stream_gate, name="stream_gate"),
    path("whoami", views.whoami, name="whoami"),
    path("where", views.where, name="where"),
    path("boom", views.boom, name="boom"),
    path("download", views.download, name="download"),
    path("hello/<str:name>", views.hello, name="hello"),
]
