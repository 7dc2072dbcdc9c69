raise ImportError("this script is broken on purpose")
