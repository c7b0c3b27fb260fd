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
    acked = {1: [f"q1-{i}".encode() for i in range(5)], 2: [f"q2-{i}".encode() for i in range(5)]}
    for i in range(5):
        for qos in (1, 2):  # publish() returns after PUBACK / PUBCOMP
            pub.publish(f"restart/q{qos}", acked[qos][i], qos=qos)
    pub.close()

    broker.restart(hard=hard)

    back = client_factory(version=version, client_id=cid, clean=False, **SESSION[version])
    assert back.connack.session_present is True, "persistent session lost in the restart"
    got = back.recv_n(11)
    retained_copy = [m for m in got if m.topic == "restart/retained"]
    assert [m.payload for m in retained_copy] == [b"kept"]
    for qos in (1, 2):
        queued = [m.payload for m in got if m.topic == f"restart/q{qos}"]
        assert queued == acked[qos], (
            f"QoS {qos}: acknowledged messages lost or reordered in the restart")
    back.expect_nothing(what="(duplicates after the restart)")

    fresh = client_factory(version=version)
    fresh.subscribe("restart/retained", qos=1)
    m = fresh.recv()
    assert (m.payload, m.retain) == (b"kept", True)
