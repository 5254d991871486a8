
# ---- Appended by tools/docsite.sh from docs/sphinx/conf-offline.py ----
from docutils import nodes

# The build is offline: no intersphinx inventory is fetched (the generated
# mapping above would download four of them), and nothing on the pages comes
# from another host.
# (globals(): this file is a tail of the generated conf.py, which defines extensions.)
extensions = [ext for ext in globals()['extensions'] if ext != 'sphinx.ext.intersphinx']
intersphinx_mapping = {}

# The theme's default top bar links to Ansible's blog, forum and documentation;
# this project's site has none of those. No version in the page titles (the
# pages show the collection's version).
html_theme_options = {'topbar_links': {}}
html_title = 'dom0.reflink documentation'

# docs/performance.md and docs/reliability.md are Markdown; MyST reads them as
# they are, with GitHub-style anchors for their headings so that their
# [text](#heading) links resolve.
extensions.append('myst_parser')
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
myst_heading_anchors = 4

# Without intersphinx the two labels of the Ansible documentation that the
# generated pages refer to (the return values every module has, and the
# configuration settings) would be undefined. They become plain links to the
# pages that the generated ansible_devel mapping points to; every other
# undefined reference stays a warning, and so an error under -W.
ANSIBLE_DOCS = 'https://docs.ansible.com/projects/ansible/devel/'
ANSIBLE_DOCS_LABELS = {
    'common_return_values': ('reference_appendices/common_return_values.html#common-return-values',
                             'Return Values'),
    'ansible_configuration_settings': ('reference_appendices/config.html#ansible-configuration-settings',
                                       'Ansible Configuration Settings'),
}


def _ansible_docs_reference(_app, _env, node, contnode):
    if node.get('refdomain') != 'std' or node.get('reftype') != 'ref':
        return None
    target = ANSIBLE_DOCS_LABELS.get(node.get('reftarget'))
    if target is None:
        return None
    path, title = target
    text = contnode.astext() if node.get('refexplicit') else title
    reference = nodes.reference('', '', internal=False, refuri=ANSIBLE_DOCS + path)
    reference += nodes.inline(text, text)
    return reference


def setup(app):
    app.connect('missing-reference', _ansible_docs_reference)
