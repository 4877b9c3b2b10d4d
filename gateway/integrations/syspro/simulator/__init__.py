"""A SYSPRO fake on loopback: the OData 4 service and the e.net REST host (specs/syspro.md E).

    sim = SysproSim(SysproSimSettings(warehouse_rows=1_000_000))
    server = serve_app(sim.app)           # gateway.sandbox.server
    sim.odata_root(server.base_url)       # http://127.0.0.1:PORT/SYSPROOData/EDU1
"""

from gateway.integrations.syspro.simulator.app import (
    ENET_COMPANY, ENET_COMPANY_PASSWORD, ENET_OPERATOR, ENET_PASSWORD, ODATA_OPERATOR, ODATA_PASSWORD, SysproFaults,
    SysproSim, SysproSimSettings,
)

__all__ = ["ENET_COMPANY", "ENET_COMPANY_PASSWORD", "ENET_OPERATOR", "ENET_PASSWORD", "ODATA_OPERATOR",
           "ODATA_PASSWORD", "SysproFaults", "SysproSim", "SysproSimSettings"]
