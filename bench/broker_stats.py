"""What a broker sink left in its stream or topic, for bench/brokers.sh.

usage: broker_stats.py nats URL STREAM      -> messages records stored_bytes payload_bytes
       broker_stats.py kafka BROKERS TOPIC  -> messages records stored_bytes payload_bytes

records: a JSON message is one record, a package holds Sluice-Records of them.
stored_bytes: what the broker keeps per message (NATS: the stream's bytes, with subject
and headers; Kafka: key, value and headers as produced). payload_bytes: message values only.
Reads every message once, so run it on the bytes-per-row tables, not on 1M JSON rows
(use --count for a quick message count there).
"""
import asyncio
import sys


async def nats_stats(url, stream, count_only):
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.stream_info(stream)
    messages, stored = info.state.messages, info.state.bytes
    records = payload = 0
    if count_only:
        print(messages, "-", stored, "-")
        await nc.close()
        return
    sub = await js.subscribe(">", stream=stream, ordered_consumer=True)
    for _ in range(messages):
        msg = await sub.next_msg(timeout=30)
        payload += len(msg.data)
        records += int((msg.headers or {}).get("Sluice-Records", "1"))
    await nc.close()
    print(messages, records, stored, payload)


def kafka_stats(brokers, topic, count_only):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": brokers, "group.id": "bench", "enable.auto.commit": False})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    # Read to the end rather than trusting the high watermarks: tansu's lag behind the
    # last batch (seen: 199,935 for 200,000 messages, all of them there when read).
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    messages = records = stored = payload = 0
    quiet = 0
    while quiet < 3:
        m = c.poll(2)
        if m is None:
            quiet += 1
            continue
        if m.error():
            raise SystemExit(str(m.error()))
        quiet = 0
        messages += 1
        value, key = m.value() or b"", m.key() or b""
        headers = dict(m.headers() or [])
        payload += len(value)
        stored += len(value) + len(key) + sum(len(k) + len(v or b"") for k, v in headers.items())
        records += int(headers.get("sluice-records", b"1"))
    c.close()
    if count_only:
        print(messages, records, "-", "-")
    else:
        print(messages, records, stored, payload)


def main():
    kind, where, name = sys.argv[1:4]
    count_only = "--count" in sys.argv[4:]
    if kind == "nats":
        asyncio.run(nats_stats(where, name, count_only))
    else:
        kafka_stats(where, name, count_only)


main()
