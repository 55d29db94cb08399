"""The example function deployed by deploy/local/up.sh.

Lambda-style: the python3 runtime imports this module and calls
handler(event, context) with the call's JSON parameters as `event`.
"""


def handler(event, context):
    name = event.get("name", "world")
    # Printed lines are the call's logs: `faasctl call logs <id>`.
    print("saying hello to", name)
    return {"greeting": f"hello {name}"}
