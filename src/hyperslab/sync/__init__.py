"""Replication of snapshots, reference maps and hot chunks between sites (issue: sync/).

Not built yet.
"""
