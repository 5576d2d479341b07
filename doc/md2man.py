#!/usr/bin/env python3
"""Turn doc/integrating.md into the man page osslproc-integrating.7.

The guide is written once, in Markdown; the man page is this script's
output, kept in the tree so that it installs without Python.  Only the
Markdown the guide uses is understood: headings, paragraphs, "-" and
"1." lists, fenced code, `code`, and <!-- file: guide/X.c --> markers in
front of code blocks that must equal the file doc/guide/X.c.

    md2man.py integrating.md > man/osslproc-integrating.7
    md2man.py --check integrating.md man/osslproc-integrating.7 guide/

--check fails when the man page is not this script's output for the
Markdown, or when a marked code block differs from its file (or a file
in guide/ is not in the guide), so the three cannot drift apart.
"""
import difflib
import os
import re
import sys

TITLE = 'OSSLPROC-INTEGRATING'
DATE = '2026-11-25'
NAME = ('osslproc-integrating \\- integrating osslproc into prefork '
        'daemons, plugin hosts, vendoring plugins and shared-memory servers')


def escape(text):
    """Escape text for roff: backslashes, and minus signs that must stay
    ASCII when copied (commands, code)."""
    return text.replace('\\', '\\e')


def code_line(line):
    line = escape(line).replace('-', '\\-')
    # A leading dot or quote would be read as a request.
    if line.startswith(('.', "'")):
        line = '\\&' + line
    return line


MAN_REF = re.compile(r'\b([a-z_][a-z0-9_-]*)\(([1-8])\)')


def inline(text):
    """`code` in bold, man page references as .BR would print them."""
    out = []
    for i, part in enumerate(re.split(r'`([^`]*)`', text)):
        if i % 2:
            out.append('\\fB' + escape(part).replace('-', '\\-') + '\\fR')
        else:
            part = escape(part)
            part = MAN_REF.sub(lambda m: '\\fB' + m.group(1).replace(
                '-', '\\-') + '\\fR(' + m.group(2) + ')', part)
            out.append(part)
    line = ''.join(out)
    if line.startswith(('.', "'")):
        line = '\\&' + line
    return line


def convert(md):
    lines = md.split('\n')
    out = ['.\\" Generated from doc/integrating.md by doc/md2man.py; '
           'edit the Markdown.',
           '.TH %s 7 %s "osslproc 0.2" "osslproc Manual"' % (TITLE, DATE),
           '.SH NAME', NAME]
    i = 0
    pending_para = False
    in_list = False
    while i < len(lines):
        line = lines[i]
        if line.startswith('# '):
            i += 1
            out.append('.SH DESCRIPTION')
            pending_para = False
            continue
        if line.startswith('## '):
            out.append('.SH ' + escape(line[3:].upper()))
            pending_para = in_list = False
            i += 1
            continue
        if line.startswith('### '):
            out.append('.SS ' + escape(line[4:]))
            pending_para = in_list = False
            i += 1
            continue
        m = re.match(r'<!-- file: (\S+) -->$', line)
        if m:
            out.append('.\\" file: ' + m.group(1))
            i += 1
            continue
        if line.startswith('```'):
            i += 1
            if in_list:
                out.append('.PP')
                in_list = False
            elif pending_para or out[-1].startswith('.\\" file:'):
                out.append('.PP')
            out.append('.EX')
            while not lines[i].startswith('```'):
                out.append(code_line(lines[i]))
                i += 1
            out.append('.EE')
            i += 1
            pending_para = True
            continue
        if not line.strip():
            i += 1
            continue
        m = re.match(r'(- |\d+\. )(.*)', line)
        if m:
            tag = '\\(bu' if m.group(1) == '- ' else m.group(1).strip()
            width = '2' if tag == '\\(bu' else '3'
            out.append('.IP %s %s' % (tag, width) if not in_list else
                       '.IP ' + tag)
            in_list = True
            out.append(inline(m.group(2)))
            i += 1
            while i < len(lines) and lines[i].startswith('  ') and \
                    lines[i].strip():
                out.append(inline(lines[i].strip()))
                i += 1
            pending_para = True
            continue
        # A paragraph: lines up to a blank line.
        if pending_para or in_list:
            out.append('.PP')
        in_list = False
        while i < len(lines) and lines[i].strip() and \
                not lines[i].startswith(('#', '```', '<!--')):
            out.append(inline(lines[i].strip()))
            i += 1
        pending_para = True
    return '\n'.join(out) + '\n'


def check(md_path, man_path, guide_dir):
    md = open(md_path).read()
    ok = True
    want = convert(md)
    have = open(man_path).read()
    if want != have:
        ok = False
        print('%s is not the conversion of %s; regenerate it with\n'
              '    %s %s > %s' % (man_path, md_path, sys.argv[0], md_path,
                                  man_path))
        sys.stdout.writelines(difflib.unified_diff(
            have.splitlines(True), want.splitlines(True), man_path,
            'converted'))
    blocks = dict(re.findall(r'<!-- file: guide/(\S+) -->\n```c\n(.*?)```',
                             md, re.S))
    for name in sorted(os.listdir(guide_dir)):
        if not name.endswith('.c'):
            continue
        text = open(os.path.join(guide_dir, name)).read()
        if name not in blocks:
            ok = False
            print('guide/%s is not shown in %s' % (name, md_path))
        elif blocks[name] != text:
            ok = False
            print('the guide/%s block of %s differs from the file:' %
                  (name, md_path))
            sys.stdout.writelines(difflib.unified_diff(
                blocks[name].splitlines(True), text.splitlines(True),
                md_path, name))
    for name in blocks:
        if not os.path.exists(os.path.join(guide_dir, name)):
            ok = False
            print('%s shows guide/%s, which does not exist' %
                  (md_path, name))
    if ok:
        print('ok: %s, %s and %d guide files agree' %
              (md_path, man_path, len(blocks)))
    return 0 if ok else 1


def main():
    if len(sys.argv) == 5 and sys.argv[1] == '--check':
        return check(*sys.argv[2:])
    if len(sys.argv) == 2:
        sys.stdout.write(convert(open(sys.argv[1]).read()))
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == '__main__':
    sys.exit(main())
