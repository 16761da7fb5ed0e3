"""The Billing bounded context of the domain_codegen example."""
