"""Grid search over model soups: evaluate every soup on every target, pick the best ones, plot.

    python sweep.py members=[runs/linf/export,runs/l2/export,runs/l1/export,runs/nominal/export]
    python sweep.py --help
See docs/soups.md.
"""

from rws.cli.sweep import main

if __name__ == "__main__":
    main()
