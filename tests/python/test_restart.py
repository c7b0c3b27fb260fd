"""With the sled engine, retained messages and persistent sessions survive a restart of the
process, SIGKILL included."""

import pytest

from fleetmq_testlib import V311, V5

SESSION = {V5: {"SessionExpiryInterval": 3600}, V311: {}}


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
def test_retained_and_session_survive_restart(broker, client_factory, version, hard):
    cid = f"restart-{version}-{hard}"
    c = client_factory(version=version, client_id=cid, clean=False, **SESSION[version])
    c.subscribe("restart/#", qos=2)
    c.disconnect()

    pub = client_factory(version=version)
    pub.publish("restart/retained", b"kept", qos=1, retain=True)
    acked = [f"m{i}".encode() for i in range(10)]
    for i, p in enumerate(acked):
        pub.publish("restart/q", p, qos=1 + i % 2)  # returns after PUBACK / PUBCOMP
    pub.close()

    broker.restart(hard=hard)

    back = client_factory(version=version, client_id=cid, clean=False, **SESSION[version])
    assert back.connack.session_present is True, "persistent session lost in the restart"
    got = back.recv_n(11)
    retained_copy = [m for m in got if m.topic == "restart/retained"]
    queued = [m.payload for m in got if m.topic == "restart/q"]
    assert [m.payload for m in retained_copy] == [b"kept"]
    assert queued == acked, "acknowledged messages were lost or reordered in the restart"

    fresh = client_factory(version=version)
    fresh.subscribe("restart/retained", qos=1)
    m = fresh.recv()
    assert (m.payload, m.retain) == (b"kept", True)
