"""`python -m neurosteer`: the same command line as the `neurosteer` console script."""

from neurosteer.cli.main import main

if __name__ == "__main__":  # pragma: no branch
    main()
