"""Switched PDUs: outlet states, power per outlet, switching."""
