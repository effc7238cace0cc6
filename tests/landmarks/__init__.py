"""Tests of tfpets.landmarks; a package so that test file names may repeat those of other areas."""
