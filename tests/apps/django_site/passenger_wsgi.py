# Startup file as cPanel's "Setup Python App" generates it for a Django project.
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from mysite.wsgi import application  # noqa: E402,F401
