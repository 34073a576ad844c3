"""Quiesced snapshots: the cycle around the cut, its targets, the agent client, reports."""
