"""`python -m still_cli.sandbox --zygote FD`: the zygote process (zygote.py) that forks sandbox workers."""

import sys

from .zygote import zygote_main

if len(sys.argv) == 3 and sys.argv[1] == "--zygote":
    zygote_main(int(sys.argv[2]))
else:
    sys.exit("usage: python -m still_cli.sandbox --zygote FD (started by the sandbox itself, not by hand)")
