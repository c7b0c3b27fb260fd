"""CONNECT / CONNACK with MQTT 3.1.1 and MQTT 5."""

from fleetmq_testlib import V311, V5


def test_connect_v311(client_factory):
    c = client_factory(version=V311)
    assert c.connack.reason_code == 0
    assert c.connack.session_present is False
    c.disconnect()


def test_connect_v311_empty_client_id_with_clean_session(client_factory):
    # MQTT 3.1.1 [MQTT-3.1.3-6]: an empty client id with clean session = 1 is accepted.
    c = client_factory(version=V311, client_id="")
    assert c.connack.reason_code == 0
    c.subscribe("empty/id", qos=1)
    c.publish("empty/id", b"works", qos=1)
    assert c.recv().payload == b"works"


def test_connect_v5_connack_properties_defaults(client_factory):
    c = client_factory(version=V5)
    assert c.connack.reason_code == 0
    assert c.connack.session_present is False
    p = c.connack_properties
    # fleetmq.example.toml defaults: receive_maximum = 1024, topic_alias_maximum = 64.
    assert getattr(p, "ReceiveMaximum", None) == 1024
    assert getattr(p, "TopicAliasMaximum", None) == 64
    # Keep alive 30 is below max_keep_alive (3600): no Server Keep Alive needed, and if one
    # is sent it must be the asked value.
    assert getattr(p, "ServerKeepAlive", 30) == 30
    # The client chose its id: none is assigned.
    assert not hasattr(p, "AssignedClientIdentifier")


def test_connect_v5_configured_limits_are_advertised(broker_factory, client_factory):
    b = broker_factory(config={"mqtt": {"receive_maximum": 50, "topic_alias_maximum": 10,
                                        "max_keep_alive": 10}})
    c = client_factory(version=V5, on=b, keepalive=60)
    p = c.connack_properties
    assert getattr(p, "ReceiveMaximum", None) == 50
    assert getattr(p, "TopicAliasMaximum", None) == 10
    # The client asked for 60 s, the server allows at most 10: Server Keep Alive = 10.
    assert getattr(p, "ServerKeepAlive", None) == 10


def test_connect_v5_keep_alive_zero_gets_server_keep_alive(broker_factory, client_factory):
    # Keep alive 0 means "no keep alive": with a configured maximum the server imposes it.
    b = broker_factory(config={"mqtt": {"max_keep_alive": 20}})
    c = client_factory(version=V5, on=b, keepalive=0)
    assert getattr(c.connack_properties, "ServerKeepAlive", None) == 20


def test_connect_v5_keep_alive_below_max_is_kept(broker_factory, client_factory):
    b = broker_factory(config={"mqtt": {"max_keep_alive": 20}})
    c = client_factory(version=V5, on=b, keepalive=5)
    assert getattr(c.connack_properties, "ServerKeepAlive", 5) == 5


def test_connect_v5_assigned_client_identifier(client_factory):
    a = client_factory(version=V5, client_id="")
    b = client_factory(version=V5, client_id="")
    id_a = getattr(a.connack_properties, "AssignedClientIdentifier", None)
    id_b = getattr(b.connack_properties, "AssignedClientIdentifier", None)
    assert id_a, "no Assigned Client Identifier for an empty client id"
    assert id_b, "no Assigned Client Identifier for an empty client id"
    assert id_a != id_b
    # Both connections work independently.
    a.subscribe("assigned/t", qos=1)
    b.publish("assigned/t", b"hi", qos=1)
    assert a.recv().payload == b"hi"


def test_connect_v5_session_takeover_disconnects_first_with_0x8e(client_factory):
    first = client_factory(version=V5, client_id="takeover-me")
    second = client_factory(version=V5, client_id="takeover-me")
    assert second.connack.reason_code == 0
    d = first.wait_disconnected()
    assert d.reason_code == 0x8E, f"first connection closed with {d.reason_code:#04x}"
    # The new connection is fully usable.
    second.subscribe("takeover/t", qos=1)
    second.publish("takeover/t", b"x", qos=1)
    assert second.recv().payload == b"x"


def test_connect_v311_session_takeover_closes_first(client_factory):
    first = client_factory(version=V311, client_id="takeover-311")
    second = client_factory(version=V311, client_id="takeover-311")
    assert second.connack.reason_code == 0
    first.wait_disconnected()
