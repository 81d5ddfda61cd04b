"""A small Python pipeline whose workers report where they run; run as a script by
test_container.py (so that Beam pickles its functions by value)."""

import os
import sys

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to


def where(x):
    import inferbridge

    return (x * 2, os.getuid(), sys.executable, inferbridge.__name__)


def main() -> None:
    expected = [(x * 2, *sys.argv[1].split(",")) for x in (1, 2, 3)]
    expected = [(doubled, int(uid), executable, package) for doubled, uid, executable, package in expected]
    with beam.Pipeline(argv=sys.argv[2:]) as p:
        assert_that(p | beam.Create([1, 2, 3]) | beam.Map(where), equal_to(expected))
    print("pipeline done")


if __name__ == "__main__":
    main()
