from __future__ import annotations

import json

from django import forms

from billing.forms import DollarField

from ..models import Clearance


class McpServerForm(forms.Form):
    name = forms.RegexField(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$", max_length=32,
                            help_text="Lower-case letters, digits and dashes; agents connect to /mcp/<name>/.",
                            error_messages={"invalid": "1 to 32 lower-case letters, digits and dashes (not at either end)."})
    url = forms.CharField(max_length=500, label="URL", help_text="The server's Streamable HTTP endpoint, e.g. "
                                                                 "http://crm.internal:8000/mcp")
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    timeout_seconds = forms.IntegerField(min_value=1, max_value=600, initial=30, label="Timeout (seconds)")


class McpServerEditForm(McpServerForm):
    active = forms.BooleanField(required=False, help_text="A retired server answers no agent.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.fields["name"]


class McpToolForm(forms.Form):
    name = forms.RegexField(r"^[A-Za-z0-9_.-]{1,64}$", max_length=64,
                            error_messages={"invalid": "An MCP tool name: 1 to 64 letters, digits, _ . or -."})
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    input_schema = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 4, "class": "code"}),
                                   label="Input schema (JSON Schema)", initial='{"type": "object"}')
    price = DollarField(max_dollars=1_000, label="Price per call ($)", required=False,
                        help_text="A new tool's first price; empty keeps the price it has (finance changes "
                                      "prices). Without one, the gate denies the tool.")
    clearance = forms.TypedChoiceField(coerce=int, choices=Clearance.choices, initial=Clearance.INTERNAL,
                                       help_text="The most sensitive data it may be sent.")
    returns = forms.TypedChoiceField(coerce=int, choices=Clearance.choices, initial=Clearance.PUBLIC,
                                     help_text="How sensitive its answers are: its callers carry that afterwards.")
    active = forms.BooleanField(required=False, initial=True)

    def clean_input_schema(self):
        text = self.cleaned_data["input_schema"].strip() or '{"type": "object"}'
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            raise forms.ValidationError("Not JSON.") from None

    def service_arguments(self) -> dict:
        data = dict(self.cleaned_data)
        data["price_micros"] = data.pop("price")
        return data
