"""Everything that crosses the network: transports, fan-out, file transfer, probes.

The only package that imports fabric or paramiko.
"""
