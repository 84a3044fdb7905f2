"""The fast path of rank-table validation: many format-1.0 documents checked in bulk.

    tables = fast_tables([json.loads(text) for text in texts])   # None: ask check.py

`orchestrator/hccl/check.py` holds the rules and names every problem; this module only
recognises, with a few C-level passes over all devices of all documents at once, documents
that break none of them, in the layout everyone writes: servers in server_id order, devices
ascending within a server, rank ids 0..N-1 in list order. It accepts nothing the full check
refuses; anything else (format 1.2, other orders, any problem) gives None, and the caller
runs the full check. `ranktable merge` of 1,024 per-server files and `bench/ranktable.py`
depend on it being fast.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import accumulate, chain, compress, count
from operator import itemgetter
from typing import Any

from orchestrator.hccl.ranktable import (
    STATUS_COMPLETED,
    VERSION_1_0,
    RankServer,
    RankTable,
    make_devices,
)

_DEVICE_ID, _DEVICE_IP, _RANK_ID = map(itemgetter, ("device_id", "device_ip", "rank_id"))
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"  # as check.is_valid_ipv4
_IPV4_LINES = re.compile(rf"{_IPV4}(?:\n{_IPV4})*")
_DIGIT_LINES = re.compile(r"[0-9]+(?:\n[0-9]+)*")
_NOT_IPV4_LOOKING = re.compile(r"(?:[^\n]*[^0-9.\n][^\n]*)(?:\n[^\n]*[^0-9.\n][^\n]*)*")

_Found = tuple[list[int], list[str], list[int], list[int], list[str]]


def _lines(text: str) -> int:
    return text.count("\n") + 1


def _servers_of(docs: Sequence[Any]) -> tuple[list[int], list[Any]] | None:
    """Servers per document and all servers, if every document has the 1.0 top level."""
    per_doc, servers = [], []
    for doc in docs:
        lst = doc["server_list"]
        if (doc["version"] != VERSION_1_0 or doc["status"] != STATUS_COMPLETED
                or type(lst) is not list or not lst or doc["server_count"] != str(len(lst))):
            return None
        per_doc.append(len(lst))
        servers += lst
    return per_doc, servers


def _check_many(docs: Sequence[Any]) -> _Found | None:
    """(servers per doc, server ids, devices per server, device ids, device IPs), or None."""
    try:
        found = _servers_of(docs)
        if found is None:
            return None
        per_doc, servers = found
        sids = [s["server_id"] for s in servers]
        lists = [s["device"] for s in servers]
        if (set(map(type, lists)) != {list}
                or not {str}.issuperset(map(type, [s.get("host_nic_ip", "") for s in servers]))):
            return None
        lens = list(map(len, lists))
        devs = list(chain.from_iterable(lists))
        ids = "\n".join(map(_DEVICE_ID, devs))  # TypeError unless all are strings
        ranks = "\n".join(map(_RANK_ID, devs))
        ips = list(map(_DEVICE_IP, devs))
        # every server_id that looks like an IPv4 address (digits and dots) must be one
        sid_text, ip_text = "\n".join(sids), "\n".join(ips)
        if (0 in lens or _lines(ids) != len(devs) or _lines(ip_text) != len(devs)
                or _lines(sid_text) != len(sids) or not _DIGIT_LINES.fullmatch(ids)
                or not _DIGIT_LINES.fullmatch(ranks)
                or not _IPV4_LINES.fullmatch(ip_text)
                or not (_IPV4_LINES.fullmatch(sid_text) or _NOT_IPV4_LOOKING.fullmatch(sid_text))):
            return None
    except (KeyError, TypeError, AttributeError):
        return None
    return _ordered(per_doc, sids, lens, ids, ranks, ips)


def _ordered(per_doc: list[int], sids: list[str], lens: list[int], ids: str, ranks: str,
             ips: list[str]) -> _Found | None:
    """The found values if each document's ranks, servers and devices are in order."""
    doc_ends = list(accumulate(per_doc))
    doc_devices = [sum(lens[a:b]) for a, b in zip([0, *doc_ends[:-1]], doc_ends, strict=True)]
    expected = chain.from_iterable(map(range, doc_devices))  # each document: 0..N-1
    if ranks.split("\n") != list(map(str, expected)):
        return None
    for a, b in zip([0, *doc_ends[:-1]], doc_ends, strict=True):
        one = sids[a:b]
        if one != sorted(one) or len(set(one)) != len(one):  # server_id order, once each
            return None
    dev_ends = list(accumulate(doc_devices))
    for a, b in zip([0, *dev_ends[:-1]], dev_ends, strict=True):
        if len(set(ips[a:b])) != b - a:  # device IPs unique within a table
            return None
    id_ints = list(map(int, ids.split("\n")))
    # device ids ascend within each server: they may only fall where a server starts
    falls = compress(count(1), map(int.__ge__, id_ints, id_ints[1:]))
    if not set(accumulate(lens)).issuperset(falls):
        return None
    return per_doc, sids, lens, id_ints, ips


def fast_tables(docs: Sequence[Any]) -> list[RankTable] | None:
    """Each document's RankTable if all break no rule (checked in bulk); else None."""
    found = _check_many(docs)
    if found is None:
        return None
    per_doc, sids, lens, id_ints, ips = found
    devices = make_devices(id_ints, ips)
    tables = []
    start = 0  # index of the server's first device in `devices`
    server = 0
    for n_servers in per_doc:
        servers = []
        doc_start = start
        for sid, n in zip(sids[server:server + n_servers], lens[server:server + n_servers],
                          strict=True):
            servers.append(RankServer(sid, devices[start:start + n], start - doc_start))
            start += n
        server += n_servers
        tables.append(RankTable(tuple(servers), VERSION_1_0))
    return tables


def table_is_valid(table: RankTable) -> bool:
    """True if `table.to_json()` breaks no rule (format 1.0, checked in bulk on the table
    itself, without building the JSON); False means: ask `check.validate_doc`."""
    servers = table.servers
    if table.version != VERSION_1_0 or not servers:
        return False
    sids = [s.server_id for s in servers]
    lens = [len(s.devices) for s in servers]
    devs = list(chain.from_iterable(s.devices for s in servers))
    if (0 in lens or list(accumulate(lens, initial=0))[:-1] != [s.rank_start for s in servers]
            or not {str}.issuperset(map(type, sids)) or sids != sorted(sids)
            or len(set(sids)) != len(sids)):
        return False
    ips = list(map(itemgetter(1), devs))
    ids = list(map(itemgetter(0), devs))
    if not {str}.issuperset(map(type, ips)) or not {int}.issuperset(map(type, ids)):
        return False
    sid_text, ip_text = "\n".join(sids), "\n".join(ips)
    if (_lines(ip_text) != len(ips) or _lines(sid_text) != len(sids) or min(ids) < 0
            or not _IPV4_LINES.fullmatch(ip_text) or len(set(ips)) != len(ips)
            or not (_IPV4_LINES.fullmatch(sid_text) or _NOT_IPV4_LOOKING.fullmatch(sid_text))):
        return False
    falls = compress(count(1), map(int.__ge__, ids, ids[1:]))  # ascending within servers
    return set(accumulate(lens)).issuperset(falls)
