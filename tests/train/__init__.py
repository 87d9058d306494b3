"""Tests of chatalign.train (a package, so test modules may share names with other packages' tests)."""
