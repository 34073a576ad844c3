"""Quiesced snapshots: the cycle around the cut, its targets (the engine, a server), reports."""
