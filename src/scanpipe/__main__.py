"""Allow ``python -m scanpipe``: the supervisor starts workers this way."""

from scanpipe.cli import main

if __name__ == "__main__":
    main()
