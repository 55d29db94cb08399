"""Terminal escapes in the text faasctl prints (issue 10, finding 15): an
OSC 52 clipboard write, a window-title change and colour CSI sequences in
the logs and in the error message."""
import sys

OSC52 = "\x1b]52;c;ZWNobyBwd25lZA==\x07"
TITLE = "\x1b]0;pwned\x07"
CSI = "\x1b[2J\x1b[31mred\x1b[0m"


def handler(event, context):
    print(f"log line {OSC52}{TITLE}{CSI}")
    print(f"stderr line {CSI}", file=sys.stderr)
    if event.get("fail", True):
        raise RuntimeError(f"boom {OSC52}{TITLE}{CSI}")
    return {"text": f"result {CSI}"}
