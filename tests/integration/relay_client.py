"""The relay's client, run on a lab VM (standard library only); prints one JSON line.

    python3 relay_client.py URL [--from ADDRESS] [--stream RELEASE_URL CA]

The relay's password, when one is sent, comes on stdin (never in argv). With --stream it reads the first event,
only then asks the upstream directly for RELEASE_URL (verified against CA), and reads on: first_before_release
says whether the first event had arrived before the upstream was told to send the last.
"""

import base64
import http.client
import json
import ssl
import sys
import urllib.parse
import urllib.request


def main() -> None:
    args = sys.argv[1:]
    url = urllib.parse.urlsplit(args[0])
    source = args[args.index("--from") + 1] if "--from" in args else None
    credentials = sys.stdin.read().strip()
    headers = {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()} if credentials else {}
    relay_tls = ssl._create_unverified_context()  # the relay's own certificate is self-signed; not under test here
    connection = http.client.HTTPSConnection(
        url.hostname, url.port or 443, context=relay_tls, timeout=60, source_address=(source, 0) if source else None
    )
    connection.request("GET", url.path, headers=headers)
    response = connection.getresponse()
    result = {"status": response.status}
    if "--stream" in args and response.status == 200:
        release, ca = args[args.index("--stream") + 1 : args.index("--stream") + 3]
        first = response.readline()
        while first == b"\n":
            first = response.readline()
        result["first"] = first.decode().strip()
        upstream = ssl.create_default_context(cafile=ca)
        urllib.request.urlopen(release, context=upstream, timeout=30).read()
        result["first_before_release"] = result["first"] == "data: first"
        result["rest"] = response.read().decode().split()
    else:
        body = response.read().decode(errors="replace")
        try:
            result["body"] = json.loads(body)
        except ValueError:
            result["body"] = body[:200]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
