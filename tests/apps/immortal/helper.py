"""Imported by app.py at preload; reloaded in a child by /reload."""
import os

LOADED_IN = os.getpid()
TABLE = {"k%d" % i: [i, str(i)] for i in range(50)}


def lookup(k):
    return TABLE[k][1]
