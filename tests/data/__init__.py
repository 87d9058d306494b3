"""Tests of chatalign.data (a package, so test modules may share names with other packages' tests)."""
