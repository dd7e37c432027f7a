"""Helpers the tests share (fakes, harnesses, servers, chart and schema tools); test modules
import these, never each other."""
