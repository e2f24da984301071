// The JavaScript E2B SDK against warren: create, run, files, list, kill.
// Environment: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY (scripts/test-e2b.sh).
import assert from 'node:assert/strict'
import { Sandbox } from 'e2b'

const sbx = await Sandbox.create({ metadata: { suite: 'js' }, envs: { FROM: 'js' } })
try {
  assert.match(sbx.sandboxId, /^[a-z0-9]+$/)
  const r = await sbx.commands.run('echo $FROM $(whoami)')
  assert.equal(r.stdout, 'js user\n')
  assert.equal(r.exitCode, 0)
  const chunks = []
  await sbx.commands.run('for i in 1 2 3; do echo $i; sleep 0.05; done', { onStdout: (d) => chunks.push(d) })
  assert.equal(chunks.join(''), '1\n2\n3\n')
  await assert.rejects(sbx.commands.run('exit 4'), (e) => e.exitCode === 4)

  await sbx.files.write('/home/user/js.txt', 'from node')
  assert.equal(await sbx.files.read('/home/user/js.txt'), 'from node')
  const names = (await sbx.files.list('/home/user')).map((e) => e.name)
  assert.ok(names.includes('js.txt'), names.join(','))
  assert.equal(await sbx.files.exists('/home/user/nope'), false)

  const info = await sbx.getInfo()
  assert.equal(info.sandboxId, sbx.sandboxId)
  assert.deepEqual(info.metadata, { suite: 'js' })
  const page = Sandbox.list({ query: { metadata: { suite: 'js' } } })
  const listed = await page.nextItems()
  assert.deepEqual(listed.map((s) => s.sandboxId), [sbx.sandboxId])
  assert.equal(await sbx.isRunning(), true)
} finally {
  await sbx.kill()
}
assert.equal(await sbx.isRunning(), false)
console.log('PASS js smoke (e2b ' + (await import('e2b/package.json', { with: { type: 'json' } }).then((m) => m.default.version).catch(() => '?')) + ')')
