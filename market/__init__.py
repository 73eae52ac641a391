"""The service marketplace (issue 13): ServiceRegistry on chain, discovery, the client helper."""
