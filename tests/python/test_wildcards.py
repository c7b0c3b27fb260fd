"""Topic wildcards `+` and `#`, and `$`-topics not matched by a leading wildcard."""

import pytest

from fleetmq_testlib import V5

TOPICS = [
    "sport",
    "sport/tennis",
    "sport/tennis/player1",
    "sport/tennis/player1/ranking",
    "sport/golf/x",
    "sport/tennis/",
    "/finance",
    "other",
]

EXPECTED = {
    "sport/tennis/+": {"sport/tennis/player1", "sport/tennis/"},
    "sport/#": {"sport", "sport/tennis", "sport/tennis/player1",
                "sport/tennis/player1/ranking", "sport/golf/x", "sport/tennis/"},
    "+/+": {"sport/tennis", "/finance"},
    "+/tennis/#": {"sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking",
                   "sport/tennis/"},
    "+": {"sport", "other"},
    "#": set(TOPICS),
    "sport/+/player1": {"sport/tennis/player1"},
    "sport/tennis": {"sport/tennis"},
}


def test_wildcard_matching(client_factory, version):
    subs = {}
    for flt in EXPECTED:
        c = client_factory(version=version)
        c.subscribe(flt, qos=1)
        subs[flt] = c
    pub = client_factory(version=version)
    for t in TOPICS:
        pub.publish(t, t.encode(), qos=1)
    for flt, c in subs.items():
        want = EXPECTED[flt]
        got = c.recv_n(len(want))
        got += c.drain(1.0)
        topics = [m.topic for m in got]
        assert sorted(topics) == sorted(want), f"filter {flt!r}"
        assert all(m.payload == m.topic.encode() for m in got)


@pytest.mark.parametrize("flt", ["+/+/#", "#", "+/broker/uptime", "+/#"])
def test_dollar_topics_not_matched_by_leading_wildcards(broker_factory, client_factory,
                                                        version, flt):
    b = broker_factory(config={"mqtt": {"sys_interval": 1}})
    wild = client_factory(version=version, on=b)
    wild.subscribe(flt, qos=0)
    sys_sub = client_factory(version=V5, on=b)
    sys_sub.subscribe("$SYS/#", qos=0)
    # Positive control: $SYS messages exist (so the negative check below is not vacuous).
    sys_sub.recv()
    got = [m.topic for m in wild.drain(3.0)]
    assert not [t for t in got if t.startswith("$")], (
        f"filter {flt!r} matched $-topics: {sorted(set(got))}")

