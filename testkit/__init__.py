"""What the tests (tests/) and the benchmarks (bench/) share, kept out of the installed package: a throwaway lab
apart from the user's (lab.py) and a file server with faults on demand (fileserver.py).

pytest finds it through `pythonpath` in pyproject.toml; a bench script puts the repository root on sys.path.
"""
