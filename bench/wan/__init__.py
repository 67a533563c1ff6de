"""The WAN benchmark: emulated cities (network namespaces), its runner, and its report."""
