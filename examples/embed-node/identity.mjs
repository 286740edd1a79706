// The `mainflux:webhooks/identity` import in JavaScript, over a registry file of the shape of
// examples/registry.json (users with tokens, groups with members and roles, things with their
// group), answering as the Rust host's registry backend does (host/src/identity/registry.rs):
// the same error cases, in the same order, with the same texts.
//
// jco shapes: `role` is a string ('viewer', 'editor', 'admin'); the `error` variant of types.wit
// is `{tag: 'unauthenticated' | 'forbidden' | 'not-found' | ..., val: string}`, given by
// throwing an object whose own `payload` property is that value.

import { readFileSync } from 'node:fs';

const ROLES = ['viewer', 'editor', 'admin'];

/** An `error` of types.wit to throw from an import. */
export class IdentityError extends Error {
  constructor(tag, text) {
    super(`${tag}: ${text}`);
    this.name = 'IdentityError';
    this.payload = { tag, val: text };
  }
}

export class RegistryIdentity {
  #userByToken = new Map();
  #membersByGroup = new Map();
  #groupByThing = new Map();

  constructor(registry) {
    for (const user of registry.users) this.#userByToken.set(user.token, user.id);
    for (const group of registry.groups) {
      for (const role of Object.values(group.members)) {
        if (!ROLES.includes(role)) throw new Error(`group ${group.id}: unknown role ${role}`);
      }
      this.#membersByGroup.set(group.id, new Map(Object.entries(group.members)));
    }
    for (const thing of registry.things) this.#groupByThing.set(thing.id, thing.group_id);
  }

  static load(path) {
    return new RegistryIdentity(JSON.parse(readFileSync(path, 'utf8')));
  }

  /** `authenticate: func(token) -> result<string, error>`: the user's id. */
  authenticate = (token) => this.#user(token);

  /** `authorize-thing: func(token, thing-id, role) -> result<string, error>`: the thing's group. */
  authorizeThing = (token, thingId, role) => {
    this.#user(token);
    const groupId = this.#groupByThing.get(thingId);
    if (groupId === undefined) throw new IdentityError('not-found', 'thing not found');
    this.authorizeGroup(token, groupId, role);
    return groupId;
  };

  /** `authorize-group: func(token, group-id, role) -> result<_, error>` */
  authorizeGroup = (token, groupId, role) => {
    const user = this.#user(token);
    const members = this.#membersByGroup.get(groupId);
    if (members === undefined) throw new IdentityError('not-found', 'group not found');
    const held = members.get(user);
    if (held === undefined || ROLES.indexOf(held) < ROLES.indexOf(role)) {
      throw new IdentityError('forbidden', `this operation needs the ${role} role in the group`);
    }
  };

  #user(token) {
    const user = this.#userByToken.get(token);
    if (user === undefined) throw new IdentityError('unauthenticated', 'unknown bearer token');
    return user;
  }
}
