"""Tests of chatalign.eval (a package, so test modules may share names with other packages' tests)."""
