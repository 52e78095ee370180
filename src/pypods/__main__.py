"""``python -m pypods``: the same as the ``pypods`` command."""

from ._cli import main

main()
