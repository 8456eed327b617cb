"""The operator's screen and the PLC's OPC UA view of the line (`inspector screen`): view.py reads Redis and
evaluates the alarms, app.py serves the page and the event stream, opcua.py the OPC UA server."""
