"""The five-line quick start, runnable: register, discover, call.

muster agent --dev &
python quickstart.py
"""

from __future__ import annotations

import httpx

import muster

client = muster.MusterClient()  # MUSTER_ADDR, MUSTER_NAMESPACE, ... from the environment
client.register("payments", port=8080, address="127.0.0.1", version="1.4.2")
print(client.discover("payments", version="^1.4").ids)
http = httpx.Client(transport=muster.MusterTransport(client), trust_env=False)
try:
    http.get("http://payments/pay", timeout=1)  # goes to 127.0.0.1:8080 with Host: payments
except httpx.ConnectError:
    print("nothing listens on :8080 in this demo; the request went there")
client.close()
