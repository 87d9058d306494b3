"""Tests of chatalign.generation (a package, so test modules may share names with other packages' tests)."""
