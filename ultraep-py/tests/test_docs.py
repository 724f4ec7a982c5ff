"""The package's documented examples run as written."""

import doctest

import ultraep


def test_the_package_docstring_examples_run():
    failures, tried = doctest.testmod(ultraep)
    assert tried > 0 and failures == 0
