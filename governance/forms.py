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


class PolicyForm(forms.Form):
    name = forms.SlugField(max_length=100, help_text="Lowercase letters, digits and hyphens; the policy's id.")
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    body = forms.CharField(max_length=20_000, strip=False, widget=forms.Textarea(
        attrs={"rows": 12, "class": "code", "spellcheck": "false"}), label="Cedar policy")
    reason = forms.CharField(max_length=500, help_text="Why this change? Recorded with the version.")


class PolicyEditForm(PolicyForm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.fields["name"]


class SimulateForm(forms.Form):
    name = forms.SlugField(max_length=100, help_text="An existing policy to change, or a new name.")
    body = forms.CharField(max_length=20_000, strip=False, required=False, widget=forms.Textarea(
        attrs={"rows": 8, "class": "code", "spellcheck": "false"}), label="Draft Cedar policy")
    disable = forms.BooleanField(required=False, label="Simulate switching this policy off instead")
    limit = forms.IntegerField(min_value=1, max_value=5000, initial=500, label="Replay the last N decisions")


class RoleForm(forms.Form):
    name = forms.SlugField(max_length=64)
    description = forms.CharField(max_length=2000, required=False)
    scopes = forms.MultipleChoiceField(choices=[], widget=forms.CheckboxSelectMultiple, required=False)

    def __init__(self, *args, **kwargs):
        from .scopes import SCOPES

        super().__init__(*args, **kwargs)
        self.fields["scopes"].choices = [(name, f"{name} — {text}") for name, text in SCOPES.items()]


class GrantForm(forms.Form):
    role = forms.ModelChoiceField(queryset=None, to_field_name="name")
    expires_in_days = forms.IntegerField(min_value=1, max_value=3650, required=False,
                                         help_text="Leave empty for a grant without expiry.")

    def __init__(self, *args, **kwargs):
        from .models import Role

        super().__init__(*args, **kwargs)
        self.fields["role"].queryset = Role.objects.all()


class DataViewForm(forms.Form):
    name = forms.SlugField(max_length=100, help_text="What agents name in data.read, e.g. crm-contacts.")
    classification = forms.TypedChoiceField(coerce=int, choices=[])
    team = forms.ModelChoiceField(queryset=None, to_field_name="name", help_text="The team that owns the data.")
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, *args, **kwargs):
        from agents.models import Clearance, Team

        super().__init__(*args, **kwargs)
        self.fields["classification"].choices = Clearance.choices
        self.fields["team"].queryset = Team.objects.all()


class DataViewEditForm(DataViewForm):
    active = forms.BooleanField(required=False, help_text="A retired view is denied to every agent.")
    source = forms.CharField(max_length=300, required=False,
                             help_text="file:customers.jsonl (under WARDEN_DATA_DIR) or table:<alias>:<table>; "
                                       "empty: classified, not served.")
    columns = forms.CharField(max_length=2000, required=False, help_text="The columns it exposes, comma-separated.")
    masks = forms.JSONField(required=False, widget=forms.Textarea(attrs={"rows": 2}),
                            help_text='{"email": "confidential"}: masked for readers below that clearance.')
    row_rules = forms.JSONField(required=False, widget=forms.Textarea(attrs={"rows": 2}),
                                help_text='[{"below": "confidential", "column": "segment", "in": ["new"]}]: '
                                          "readers below that clearance see only those rows.")
    base_classification = forms.TypedChoiceField(
        coerce=int, empty_value=None, required=False, choices=[],
        help_text="The classification of the columns no mask names (empty: the view's).")
    max_rows = forms.IntegerField(min_value=1, max_value=10_000, required=False,
                                  help_text="The most rows one read returns (empty: unchanged).")

    def __init__(self, *args, **kwargs):
        from agents.models import Clearance

        super().__init__(*args, **kwargs)
        del self.fields["name"]
        self.fields["base_classification"].choices = [("", "the view's"), *Clearance.choices]

    def clean_columns(self) -> list[str]:
        return [column.strip() for column in self.cleaned_data["columns"].split(",") if column.strip()]

    def clean_masks(self):
        return self.cleaned_data["masks"] or {}

    def clean_row_rules(self):
        return self.cleaned_data["row_rules"] or []
