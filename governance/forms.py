from django import forms
from django.core.exceptions import ValidationError


def apply_errors(form, error: ValidationError) -> None:
    """Attach a service's ValidationError to the form's fields (or the form)."""
    if hasattr(error, "error_dict"):
        for field, messages in error.message_dict.items():
            form.add_error(field if field in form.fields else None, messages)
    else:
        form.add_error(None, error.messages)


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. “nightly export”.")
    expires_in_days = forms.IntegerField(required=False, min_value=1, max_value=3650, initial=90)
