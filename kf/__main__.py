"""``python -m kf ...``: the ``kf`` console script as a module (click names the program ``python -m kf``)."""
from kf.cli import main

if __name__ == "__main__":
    main()
