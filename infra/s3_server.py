"""A local S3-compatible server (moto's server mode) with a versioned bucket, for trying S3 storage offline.

    python infra/s3_server.py --port 5555 --bucket croco
    eval "$(python infra/s3_server.py --print-env --port 5555)"    # in another shell: the variables croco reads

Data lives in memory and is gone when the server stops. The tests start it the same way.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

ACCESS_KEY = "croco-local"
SECRET_KEY = "croco-local-secret"  # moto accepts any key; real credentials never go in a file


def environment(port: int) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=5555)
    parser.add_argument("--bucket", default="croco", help="bucket to create, with versioning on")
    parser.add_argument("--print-env", action="store_true", help="print the export lines for this server and exit")
    args = parser.parse_args()
    if args.print_env:
        print("\n".join(f"export {k}={v}" for k, v in environment(args.port).items()))
        return 0

    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port)
    server.start()
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{args.port}",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=args.bucket)
    s3.put_bucket_versioning(Bucket=args.bucket, VersioningConfiguration={"Status": "Enabled"})
    print(
        f"S3 server on http://127.0.0.1:{args.port}, bucket {args.bucket} (versioned); storage.root: s3://{args.bucket}/<prefix>",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
