"""Tests of chatalign.judges (a package, so test modules may share names with other packages' tests)."""
