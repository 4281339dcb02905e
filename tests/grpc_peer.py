#!/usr/bin/env python3
"""A real gRPC server and client (grpcio) for Tern's end-to-end tests: gRPC must pass through
the proxy untouched, and only a gRPC implementation that is not ours can say it did.

No .proto and no protoc: the service `test.Echo` is registered with generic handlers and raw
bytes (serializers None), so messages are whatever bytes the client sends.

    grpc_peer.py server PORT      serve test.Echo on 127.0.0.1:PORT; prints "LISTENING PORT"
                                  once it accepts connections, then runs until killed
    grpc_peer.py client TARGET    calls every method through TARGET (host:port, plaintext
                                  h2c) and prints one JSON object with what it observed

The client reports observations (codes, details, trailing metadata, counts), not verdicts:
the Rust test asserts on them, so a failure shows what arrived. A section that raised
something unexpected carries {"error": "..."} instead.
"""

import json
import queue
import sys
import traceback
from concurrent import futures

try:
    import grpc
except ImportError:
    print(
        "grpc_peer.py: the Python package grpcio is missing; run scripts/test "
        "(it installs it) or `python3 -m pip install grpcio`",
        file=sys.stderr,
    )
    sys.exit(3)

SERVICE = "test.Echo"
TRAILER = (("x-trailer", "yes"),)
# Every client call's deadline: far above what a passing run needs, so a hang fails fast.
CALL_TIMEOUT = 15.0
STREAM_MESSAGES = 100
BIG = 1024 * 1024 + 13


# --- server ----------------------------------------------------------------------------------


def unary(request, context):
    context.set_trailing_metadata(TRAILER)
    return b"echo:" + request


def server_stream(request, context):
    """Request: the number of messages wanted, as ASCII digits."""
    context.set_trailing_metadata(TRAILER)
    for i in range(int(request.decode())):
        yield b"msg-%d" % i


def bidi_stream(request_iterator, context):
    context.set_trailing_metadata(TRAILER)
    for message in request_iterator:
        yield b"bidi:" + message


def fail(request, context):
    context.set_trailing_metadata(TRAILER)
    context.abort(grpc.StatusCode.NOT_FOUND, "nope")


def stream_then_fail(request, context):
    """Some messages, then a non-OK status in the trailers after data."""
    context.set_trailing_metadata(TRAILER)
    for i in range(5):
        yield b"part-%d" % i
    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "enough")


def serve(port):
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "BidiStream": grpc.stream_stream_rpc_method_handler(bidi_stream),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "StreamThenFail": grpc.unary_stream_rpc_method_handler(stream_then_fail),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port("127.0.0.1:%d" % port)
    if bound == 0:
        print("grpc_peer.py: cannot bind 127.0.0.1:%d" % port, file=sys.stderr)
        sys.exit(2)
    server.start()
    print("LISTENING %d" % bound, flush=True)
    server.wait_for_termination()


# --- client ----------------------------------------------------------------------------------


def metadata(items):
    return {k: v for k, v in (items or ())}


def section(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 -- reported to the Rust test, which fails on it
        return {"error": traceback.format_exc()}


def run_client(target):
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)

    def method(kind, name):
        factory = getattr(channel, kind)
        return factory("/%s/%s" % (SERVICE, name))

    unary_call = method("unary_unary", "Unary")
    stream_call = method("unary_stream", "ServerStream")
    bidi_call = method("stream_stream", "BidiStream")
    fail_call = method("unary_unary", "Fail")
    stream_fail_call = method("unary_stream", "StreamThenFail")

    def do_unary():
        reply, call = unary_call.with_call(b"hello", timeout=CALL_TIMEOUT)
        return {
            "reply": reply.decode(),
            "code": call.code().name,
            "trailers": metadata(call.trailing_metadata()),
        }

    def do_unary_big():
        payload = bytes(i % 251 for i in range(BIG))
        reply = unary_call(payload, timeout=CALL_TIMEOUT)
        return {"len": len(reply), "intact": reply == b"echo:" + payload}

    def do_server_stream():
        call = stream_call(b"%d" % STREAM_MESSAGES, timeout=CALL_TIMEOUT)
        got = [m.decode() for m in call]
        return {
            "count": len(got),
            "in_order": got == ["msg-%d" % i for i in range(STREAM_MESSAGES)],
            "code": call.code().name,
            "trailers": metadata(call.trailing_metadata()),
        }

    def do_bidi():
        # Ping-pong: each message is sent only after the reply to the previous one came
        # back, so it passes only if the proxy streams both directions at once.
        outbox = queue.Queue()

        def requests():
            while True:
                item = outbox.get()
                if item is None:
                    return
                yield item

        call = bidi_call(requests(), timeout=CALL_TIMEOUT)
        replies = []
        for i in range(20):
            outbox.put(b"ping-%d" % i)
            replies.append(next(call).decode())
        outbox.put(None)
        rest = [m.decode() for m in call]
        return {
            "replies_in_lockstep": replies == ["bidi:ping-%d" % i for i in range(20)],
            "extra": rest,
            "code": call.code().name,
            "trailers": metadata(call.trailing_metadata()),
        }

    def do_fail():
        try:
            reply = fail_call(b"x", timeout=CALL_TIMEOUT)
            return {"code": "OK", "reply": reply.decode(errors="replace")}
        except grpc.RpcError as e:
            return {
                "code": e.code().name,
                "details": e.details(),
                "trailers": metadata(e.trailing_metadata()),
            }

    def do_stream_then_fail():
        call = stream_fail_call(b"x", timeout=CALL_TIMEOUT)
        got = []
        try:
            for m in call:
                got.append(m.decode())
        except grpc.RpcError:
            pass
        return {
            "received": got,
            "code": call.code().name,
            "details": call.details(),
            "trailers": metadata(call.trailing_metadata()),
        }

    result = {
        "unary": section(do_unary),
        "unary_big": section(do_unary_big),
        "server_stream": section(do_server_stream),
        "bidi": section(do_bidi),
        "fail": section(do_fail),
        "stream_then_fail": section(do_stream_then_fail),
    }
    channel.close()
    print(json.dumps(result))


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("server", "client"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    if sys.argv[1] == "server":
        serve(int(sys.argv[2]))
    else:
        run_client(sys.argv[2])


if __name__ == "__main__":
    main()
