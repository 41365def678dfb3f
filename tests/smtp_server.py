"""A small SMTP server for riposte's email test (tests/tests/notify_email.rs), on aiosmtpd.

It requires STARTTLS before anything else and AUTH (LOGIN or PLAIN) with one user, whose
password it reads from a file. Each message it accepts is written to --out as N.eml (the bytes
received) and N.json (the envelope, the login, whether TLS was on, and the message as Python's
own mail parser sees it), the .json last, so a reader that sees it sees both whole.

    python3 tests/smtp_server.py --port P --cert C --key K --user U --password-file F --out DIR

It prints "ready" once it listens, and runs until it is killed.
"""

import argparse
import email
import email.policy
import json
import os
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def as_text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class Saver:
    def __init__(self, out):
        self.out = out
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.count += 1
            n = self.count
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        parts = []
        for part in msg.walk():
            if part.is_multipart():
                continue
            parts.append(
                {
                    "content_type": part.get_content_type(),
                    "charset": part.get_content_charset(),
                    "body": part.get_content(),
                }
            )
        summary = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": session.ssl is not None,
            "login": as_text(getattr(session.auth_data, "login", None)),
            "from": str(msg["From"]),
            "to": [str(a) for a in msg.get_all("To", [])],
            "subject": str(msg["Subject"]),
            "message_id": str(msg["Message-ID"]),
            "content_type": msg.get_content_type(),
            "parts": parts,
        }
        base = os.path.join(self.out, str(n))
        with open(base + ".eml", "wb") as f:
            f.write(raw)
        with open(base + ".json.tmp", "w") as f:
            json.dump(summary, f)
        os.rename(base + ".json.tmp", base + ".json")
        return "250 OK"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password-file", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(args.password_file) as f:
        password = f.read().strip()

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and as_text(auth_data.login) == args.user
            and as_text(auth_data.password) == password
        )
        # handled=False: aiosmtpd answers a failure with 535 itself.
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.cert, args.key)
    controller = Controller(
        Saver(args.out),
        hostname="127.0.0.1",
        port=args.port,
        tls_context=tls,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=authenticate,
    )
    controller.start()
    print("ready", flush=True)
    try:
        threading.Event().wait()
    finally:
        controller.stop()


if __name__ == "__main__":
    sys.exit(main())
