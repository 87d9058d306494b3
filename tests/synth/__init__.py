"""Tests of chatalign.synth (a package, so test modules may share names with other packages' tests)."""
