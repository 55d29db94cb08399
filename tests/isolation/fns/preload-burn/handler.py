"""Burns CPU from import time on (issue 10, finding 10): preloaded, this
thread runs for as long as the spot waits for a call, with no call and so
nobody's timeout running."""
import threading


def burn():
    n = 0
    while True:
        n += 1


threading.Thread(target=burn, daemon=True).start()


def handler(event, context):
    return {"burning": True}
